"""The HTTP side: a small bounded HTTP/1.1 server (`httpd`), the endpoints (`server`), the status page
(`status`) and --web.config.file (`webconfig`). It reads published snapshots only and never calls the API.

May import exporter.common, config, state and exposition; never the collection."""
