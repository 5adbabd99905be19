"""Offline processing of recorded data (rosbag2) with the node's own pipeline."""
