"""Reading stores: the embedded DuckDB store (default) and later InfluxDB and the spool."""
