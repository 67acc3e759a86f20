"""Alert lifecycle: dedup by fingerprint, JSONL feed, console output."""
