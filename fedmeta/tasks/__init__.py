"""Task distributions and their partitions across devices."""
