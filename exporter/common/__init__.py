"""Helpers every stage may use: text from outside made safe to keep (encodable, bounded, without secrets), and
logging with every known secret redacted. Imports nothing else of the exporter."""
