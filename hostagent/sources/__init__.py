"""Pure parsers (text -> typed records) and thin readers that fetch their input through Host."""
