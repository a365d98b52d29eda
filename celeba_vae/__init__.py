"""The machinery no notebook imports: where CelebA is and how it reads (``celeba_files``, ``hub``), the decoded
cache (``decoded_cache``), GPU placement (``gpu_budget``), precision (``precision``), the checkpoint format and
atomic files (``checkpoint``, ``atomic_files``), paths and recipes (``paths``, ``recipes``), synthetic faces
(``synthetic``) and the self-check (``selfcheck``). What the notebooks import sits at the top level."""
