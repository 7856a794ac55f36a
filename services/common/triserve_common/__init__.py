"""Code shared by every triserve service (installed, never copied)."""
