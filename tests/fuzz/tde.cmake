# tdenode parsers: the page header and page_open (later also the node's
# metadata files, nonce slots and journal records).
kv_add_fuzz(NAME page SOURCES fuzz/fuzz_page.c LIBS tde_page CORPUS page)
# tdenode's own files: record files (meta, manifests), counter slots,
# journal record headers, config grant lines.
kv_add_fuzz(NAME tde_files SOURCES fuzz/fuzz_tde_files.c LIBS tde_node CORPUS tde_files)
# The Pages service's request handling up to the first database access:
# dispatch, decoding, id/target checks, grants.
kv_add_fuzz(NAME pages_request SOURCES fuzz/fuzz_pages_request.c LIBS tde_node CORPUS pages_request)
