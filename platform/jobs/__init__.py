"""Jobs: submission, status, results and cancellation."""
