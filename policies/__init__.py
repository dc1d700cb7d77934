"""Access decisions. Pure: no sockets, no files, no clock of its own."""
