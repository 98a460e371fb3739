"""RGB-D data: the embedded synthetic scene generator (``synthetic``), dataset readers (``datasets``)
and calibration-set selection (``calib``). Import the submodules directly; this package imports nothing
heavy on its own."""
