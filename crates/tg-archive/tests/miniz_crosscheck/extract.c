#include "miniz.h"
#include <stdio.h>
int main(int argc, char **argv) {
    for (int a = 1; a < argc; a++) {
        printf("== %s\n", argv[a]);
        mz_zip_archive z; memset(&z, 0, sizeof z);
        if (!mz_zip_reader_init_file(&z, argv[a], 0)) { printf("ERR\n"); continue; }
        mz_uint n = mz_zip_reader_get_num_files(&z);
        printf("OK %u\n", n);
        for (mz_uint i = 0; i < n; i++) {
            mz_zip_archive_file_stat st;
            mz_zip_clear_last_error(&z);
            int okstat = mz_zip_reader_file_stat(&z, i, &st);
            if (!okstat) { printf("%u statfail\n", i); continue; }
            if (!st.m_is_supported) { printf("%u skip\n", i); continue; }
            if (st.m_is_directory || st.m_comp_size == 0) { printf("%u empty\n", i); continue; }
            if (st.m_uncomp_size > (1u<<30)) { printf("%u fail\n", i); continue; }
            size_t sz; void *p = mz_zip_reader_extract_to_heap(&z, i, &sz, 0);
            if (!p) { printf("%u fail\n", i); continue; }
            printf("%u ok %zu %08lx\n", i, sz, (unsigned long)mz_crc32(MZ_CRC32_INIT, p, sz));
            free(p);
        }
        mz_zip_reader_end(&z);
    }
    return 0;
}
