"""The job's commands that are not the merge itself, one module each."""
