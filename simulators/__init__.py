"""Simulated meters that speak the real protocols (Modbus TCP, MQTT) on a simulated clock."""
