/* The payload the firmware carries and measures into PCR 4 (measure.c): a blob in the image,
 * outside its code. The image header records where it lies (its start and end offsets), so a
 * verifier finds the same bytes in the image; link.ld keeps it within TPM2_PCR_Event's limit. */
    .section .payload, "a"
    .ascii "tdpvtpm L2 payload: a measured blob the firmware extends into a PCR\n"
