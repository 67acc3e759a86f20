"""Collectors: Modbus polling and MQTT subscription into canonical readings (I/O and timing)."""
