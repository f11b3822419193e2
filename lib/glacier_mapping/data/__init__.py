"""Data: regions, the synthetic benchmark, the HDF5 tile schema, patch pipelines and scenes."""
