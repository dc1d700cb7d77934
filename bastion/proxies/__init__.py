"""Target protocol proxies, one module per protocol behind one interface."""
