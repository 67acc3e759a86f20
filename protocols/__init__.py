"""Pure protocol codecs: register maps, Modbus data types, MQTT payloads. No sockets here."""
