"""Feature datasets: importers, the embedded synthetic benchmark, input pipelines."""
