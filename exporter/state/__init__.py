"""What the collection has learnt: the recorder the loop fills (`recorder`), and the immutable snapshot it
publishes (`snapshot`), which the exposition and the web side read.

May import exporter.common, exporter.graph (its records and reasons) and exporter.config."""
