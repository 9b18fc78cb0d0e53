"""A snapshot as Prometheus reads it, built when the snapshot is published: each dataset's lines (`families`:
one class per group of families; `fleet`: the exporter's own families; `render`: how a sample is written),
kept until its data changes, joined family by family (`publisher`), and kept compressed in blocks (`deflate`).

May import exporter.common, exporter.graph, exporter.config and exporter.state. Nothing here calls the API."""
