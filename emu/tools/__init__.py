"""Tools that work on a running emu VM from the outside."""
