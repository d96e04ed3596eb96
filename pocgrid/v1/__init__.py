"""Generated from protos/pocgrid/v1 by tools/gen_protos.py. Do not edit."""
