"""The update catalog: software updates, their artifacts, release and signing."""
