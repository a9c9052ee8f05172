"""Infrastructure every layer stands on: the settings schema and config
loading, errors, the table catalog and paths, the filesystem layer, the one
Spark session builder, Delta reads and writes, logging, redaction."""
