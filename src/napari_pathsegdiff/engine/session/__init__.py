"""One slide's annotation session: labels, edits, session folders, exports, suggestions."""
