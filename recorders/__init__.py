"""Session recording and replay (asciicast v2). Knows nothing of SSH."""
