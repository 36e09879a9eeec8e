"""Rich renderables: each module returns something to print, never prints itself."""
