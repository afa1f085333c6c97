"""Studies: whole investigations composed from probes, each writing a report."""
