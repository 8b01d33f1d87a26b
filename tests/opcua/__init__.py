"""OPC UA driver, configuration and certificate tests (real asyncua servers on 127.0.0.1)."""
