// Chemical symbols <-> atomic numbers, for `pair_coeff * * model.pt C H O`.
#ifndef SO3KRATES_ELEMENT_TABLE_H
#define SO3KRATES_ELEMENT_TABLE_H

#include <string>

namespace so3krates {

inline const char *const ELEMENT_SYMBOLS[] = {
    "X",  "H",  "He", "Li", "Be", "B",  "C",  "N",  "O",  "F",  "Ne", "Na", "Mg", "Al", "Si",
    "P",  "S",  "Cl", "Ar", "K",  "Ca", "Sc", "Ti", "V",  "Cr", "Mn", "Fe", "Co", "Ni", "Cu",
    "Zn", "Ga", "Ge", "As", "Se", "Br", "Kr", "Rb", "Sr", "Y",  "Zr", "Nb", "Mo", "Tc", "Ru",
    "Rh", "Pd", "Ag", "Cd", "In", "Sn", "Sb", "Te", "I",  "Xe", "Cs", "Ba", "La", "Ce", "Pr",
    "Nd", "Pm", "Sm", "Eu", "Gd", "Tb", "Dy", "Ho", "Er", "Tm", "Yb", "Lu", "Hf", "Ta", "W",
    "Re", "Os", "Ir", "Pt", "Au", "Hg", "Tl", "Pb", "Bi", "Po", "At", "Rn", "Fr", "Ra", "Ac",
    "Th", "Pa", "U",  "Np", "Pu", "Am", "Cm", "Bk", "Cf", "Es", "Fm", "Md", "No", "Lr", "Rf",
    "Db", "Sg", "Bh", "Hs", "Mt", "Ds", "Rg", "Cn", "Nh", "Fl", "Mc", "Lv", "Ts", "Og"};

constexpr int MAX_ATOMIC_NUMBER = 118;

// 0 when `symbol` is not a chemical symbol (symbols are case-sensitive, as in LAMMPS).
inline int atomic_number(const std::string &symbol)
{
  for (int z = 1; z <= MAX_ATOMIC_NUMBER; ++z)
    if (symbol == ELEMENT_SYMBOLS[z]) return z;
  return 0;
}

inline std::string element_symbol(int z)
{
  return (z >= 1 && z <= MAX_ATOMIC_NUMBER) ? ELEMENT_SYMBOLS[z] : "Z=" + std::to_string(z);
}

}    // namespace so3krates

#endif
