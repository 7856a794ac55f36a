"""triserve command line: sample digits, run the platform locally, benchmark."""
