"""Files in and out for the applications: image files (``images``) and batch runs over files, folders
and globs with per-file reports (``batch``). Below the applications, so that every application and the
command line share them."""
