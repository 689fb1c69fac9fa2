"""SQLite storage: `database` opens the file and hands out connections; each other module owns
the SQL of one group of tables and reads rows by column name."""
