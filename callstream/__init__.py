"""callstream's shared runtime: the CLI where the program starts, settings and Kafka plumbing."""
