"""The foundation every service stands on: settings, logging, errors, Kafka clients and the one
consumer runtime. It knows the contract (`schemas`) and nothing above it."""
