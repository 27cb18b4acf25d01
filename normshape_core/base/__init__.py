"""Layer 0, the base: what every layer shares and that imports nothing of the package: reading
a file safely (``files``), the shared names (``names``), intervals and paired tests
(``stats``), the fault-injection points (``faults``), the user's folder (``userdata``)."""
