"""Rich renderables: each module returns something to print, never prints itself
(`statusline` excepted: the one live line, drawn and redrawn by rich's ``Live``)."""
