"""Registry: chip and model catalogues, nodes and their devices, agent leases."""
