"""The school's sync server: devices and tokens, the merged corrections, signed model releases."""
