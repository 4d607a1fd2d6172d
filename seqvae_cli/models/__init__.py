"""Models, one file each: they say how they encode and decode; the objective does the rest."""
