"""The usage dashboard's aggregates."""
