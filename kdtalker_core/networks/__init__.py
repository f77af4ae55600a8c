"""Neural network modules with the official KDTalker / LivePortrait state-dict layouts."""
