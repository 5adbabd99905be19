"""The CPU's compiled loops (Numba, :mod:`seg_ros.core.compiled`): ``labels``, ``surface``
and ``masks`` for depth_objects' organised grid, ``points`` for the instances' 3D. Each
stands in for torch / NumPy code that stays beside its caller, the path on CUDA and without
Numba, and gives the same result (test/unit/test_compiled_kernels.py). Why: on the CPU
depth_objects was ~1300 small torch operations a frame, most of the time their own overhead;
a compiled pass visits each cell once (the segmentation 2.2x, the node 0.83 -> ~0.5x the
learned model's time: BENCHMARKS.md). No rclpy.
"""
