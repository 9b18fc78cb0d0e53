"""The collection: the loop that runs cycles and publishes snapshots (`scheduler`), one pass over the targets
in batches (`fetcher`), the rate-limit governor (`governor`), discovery, pixel metadata and token checks
(`housekeeping`), the credentials and their health (`credentials`), and the event loop that lets a render
thread give way (`eventloop`).

May import everything below it: exporter.common, graph, config, state and exposition; never the web side."""
