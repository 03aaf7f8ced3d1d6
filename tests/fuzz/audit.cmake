# The audit export file parser (vaultctl audit verify --file) and the
# offline verifier on what it parses.
kv_add_fuzz(NAME audit_export SOURCES fuzz/fuzz_audit_export.c LIBS kv_audit common PkgConfig::OPENSSL CORPUS audit_export)
# The audit journal (vaultd reads it back after an unclean stop).
kv_add_fuzz(NAME audit_journal SOURCES fuzz/fuzz_audit_journal.c LIBS kv_audit common PkgConfig::OPENSSL CORPUS audit_journal)
