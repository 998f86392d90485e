"""Teaching helpers for the notebooks: plots, interactive widgets, the method diagram,
exercise checks and notebook set-up. Loaded lazily by ``import r1lab`` (matplotlib, seaborn
and ipywidgets are imported only when a notebook asks for them)."""
