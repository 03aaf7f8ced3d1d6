# tdenode parsers: the page header and page_open (later also the node's
# metadata files, nonce slots and journal records).
kv_add_fuzz(NAME page SOURCES fuzz/fuzz_page.c LIBS tde_page CORPUS page)
