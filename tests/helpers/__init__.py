"""Modules the tests share (not tests themselves): a local Hub, toy training runs, data writers, helpers
for killing runs, the released checkpoint layout. Imported as `helpers.<module>` (tests/ is on the path)."""
