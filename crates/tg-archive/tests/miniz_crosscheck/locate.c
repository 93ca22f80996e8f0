#include "miniz.h"
#include <stdio.h>
/* usage: locate ZIP NAME...  prints the central index miniz resolves each NAME to (-1: none) */
int main(int argc, char **argv) {
    mz_zip_archive z; memset(&z, 0, sizeof z);
    if (!mz_zip_reader_init_file(&z, argv[1], 0)) { printf("open failed: %s\n", mz_zip_get_error_string(mz_zip_get_last_error(&z))); return 1; }
    for (int i = 2; i < argc; i++) printf("%d\n", mz_zip_reader_locate_file(&z, argv[i], NULL, 0));
    return 0;
}
