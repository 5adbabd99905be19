"""seg_ros: semantic and instance segmentation for ROS 2 camera streams."""

#: Kept equal to package.xml's <version> (test/unit/test_models.py checks).
__version__ = '0.1.0'
