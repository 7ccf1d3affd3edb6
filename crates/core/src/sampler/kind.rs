//! Sampler names: the [`Algorithm`], whether it runs on Karras sigmas, and the names users pick
//! them by (ours, the old ones, AUTOMATIC1111's).

use alloc::string::String;
use core::fmt;
use core::str::FromStr;

use super::SamplerError;

/// A sampling algorithm, without the choice of noise levels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// Euler (`EulerDiscreteScheduler`).
    Euler,
    /// Euler ancestral (`EulerAncestralDiscreteScheduler`).
    EulerAncestral,
    /// Heun's second-order method (`HeunDiscreteScheduler`).
    Heun,
    /// DPM-Solver-2 of k-diffusion (`KDPM2DiscreteScheduler`).
    Dpm2,
    /// DPM-Solver-2, ancestral (`KDPM2AncestralDiscreteScheduler`).
    Dpm2Ancestral,
    /// DPM-Solver++(2S) ancestral (k-diffusion's `sample_dpmpp_2s_ancestral`).
    DpmPP2SAncestral,
    /// DPM-Solver++(2M) (`DPMSolverMultistepScheduler`).
    DpmPP2M,
    /// DPM-Solver++(2M) "v2" (AUTOMATIC1111 discussion 8457, as in stable-diffusion.cpp).
    DpmPP2MV2,
    /// Latent consistency models' multistep sampling (`LCMScheduler`).
    Lcm,
    /// DDIM (`DDIMScheduler`).
    Ddim,
    /// PNDM's pseudo linear multistep method, AUTOMATIC1111's "PLMS" (`PNDMScheduler`).
    Pndm,
}

impl Algorithm {
    /// Every algorithm, in the order names are listed.
    pub const ALL: [Algorithm; 11] = [
        Self::Euler,
        Self::EulerAncestral,
        Self::Heun,
        Self::Dpm2,
        Self::Dpm2Ancestral,
        Self::DpmPP2SAncestral,
        Self::DpmPP2M,
        Self::DpmPP2MV2,
        Self::Lcm,
        Self::Ddim,
        Self::Pndm,
    ];

    /// The canonical name without Karras (`euler`, `euler_a`, `heun`, `dpm2`, `dpm2_a`,
    /// `dpm++2s_a`, `dpm++2m`, `dpm++2mv2`, `lcm`, `ddim`, `pndm`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Euler => "euler",
            Self::EulerAncestral => "euler_a",
            Self::Heun => "heun",
            Self::Dpm2 => "dpm2",
            Self::Dpm2Ancestral => "dpm2_a",
            Self::DpmPP2SAncestral => "dpm++2s_a",
            Self::DpmPP2M => "dpm++2m",
            Self::DpmPP2MV2 => "dpm++2mv2",
            Self::Lcm => "lcm",
            Self::Ddim => "ddim",
            Self::Pndm => "pndm",
        }
    }

    /// AUTOMATIC1111's name without Karras (`Euler a`, `DPM++ 2S a`, `PLMS`, ...).
    pub fn a1111_name(self) -> &'static str {
        match self {
            Self::Euler => "Euler",
            Self::EulerAncestral => "Euler a",
            Self::Heun => "Heun",
            Self::Dpm2 => "DPM2",
            Self::Dpm2Ancestral => "DPM2 a",
            Self::DpmPP2SAncestral => "DPM++ 2S a",
            Self::DpmPP2M => "DPM++ 2M",
            Self::DpmPP2MV2 => "DPM++ 2M v2",
            Self::Lcm => "LCM",
            Self::Ddim => "DDIM",
            Self::Pndm => "PLMS",
        }
    }

    /// Whether the algorithm works on sigmas and so can take the Karras et al. noise levels
    /// (every one except LCM, DDIM and PNDM, which step between training timesteps).
    pub fn supports_karras(self) -> bool {
        !matches!(self, Self::Lcm | Self::Ddim | Self::Pndm)
    }

    /// Model calls per step (diffusers' `scheduler.order`): 2 for Heun, DPM2, DPM2 ancestral
    /// and DPM++ 2S ancestral, 1 for the others.
    pub fn order(self) -> usize {
        match self {
            Self::Heun | Self::Dpm2 | Self::Dpm2Ancestral | Self::DpmPP2SAncestral => 2,
            _ => 1,
        }
    }

    /// The spellings that name this algorithm, lower case, Karras suffix removed: the canonical
    /// name, AUTOMATIC1111's, older names of ours and k-diffusion's function-style names.
    fn aliases(self) -> &'static [&'static str] {
        match self {
            Self::Euler => &["euler", "k_euler"],
            Self::EulerAncestral => &[
                "euler_a",
                "euler a",
                "k_euler_a",
                "euler_ancestral",
                "k_euler_ancestral",
            ],
            Self::Heun => &["heun", "k_heun"],
            Self::Dpm2 => &["dpm2", "k_dpm_2", "dpm_2"],
            Self::Dpm2Ancestral => &[
                "dpm2_a",
                "dpm2 a",
                "k_dpm_2_a",
                "dpm_2_ancestral",
                "k_dpm_2_ancestral",
            ],
            Self::DpmPP2SAncestral => &[
                "dpm++2s_a",
                "dpm++ 2s a",
                "dpmpp_2s_a",
                "k_dpmpp_2s_a",
                "dpmpp_2s_ancestral",
                "k_dpmpp_2s_ancestral",
            ],
            Self::DpmPP2M => &["dpm++2m", "dpm++ 2m", "dpmpp_2m", "k_dpmpp_2m"],
            Self::DpmPP2MV2 => &["dpm++2mv2", "dpm++ 2m v2", "dpmpp_2m_v2", "k_dpmpp_2m_v2"],
            Self::Lcm => &["lcm"],
            Self::Ddim => &["ddim"],
            Self::Pndm => &["pndm", "plms"],
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A sampler, by the name users pick it with: an [`Algorithm`] and whether it runs on the
/// Karras et al. (2022) noise levels instead of the model's own.
///
/// Karras applies to the sigma-based algorithms only ([`Algorithm::supports_karras`]);
/// [`SamplerKind::parse`] and [`SamplerKind::new`] refuse the other combinations, and
/// [`SamplerKind::build`] refuses a hand-made one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SamplerKind {
    /// The algorithm.
    pub algorithm: Algorithm,
    /// Whether the noise levels are Karras et al.'s (`use_karras_sigmas`).
    pub karras: bool,
}

impl Default for SamplerKind {
    /// Euler ancestral.
    fn default() -> Self {
        Self::EULER_A
    }
}

const fn kind(algorithm: Algorithm, karras: bool) -> SamplerKind {
    SamplerKind { algorithm, karras }
}

impl SamplerKind {
    /// `euler`.
    pub const EULER: Self = kind(Algorithm::Euler, false);
    /// `euler_karras`.
    pub const EULER_KARRAS: Self = kind(Algorithm::Euler, true);
    /// `euler_a`, the default.
    pub const EULER_A: Self = kind(Algorithm::EulerAncestral, false);
    /// `euler_a_karras`.
    pub const EULER_A_KARRAS: Self = kind(Algorithm::EulerAncestral, true);
    /// `heun`.
    pub const HEUN: Self = kind(Algorithm::Heun, false);
    /// `heun_karras`.
    pub const HEUN_KARRAS: Self = kind(Algorithm::Heun, true);
    /// `dpm2`.
    pub const DPM2: Self = kind(Algorithm::Dpm2, false);
    /// `dpm2_karras`.
    pub const DPM2_KARRAS: Self = kind(Algorithm::Dpm2, true);
    /// `dpm2_a`.
    pub const DPM2_A: Self = kind(Algorithm::Dpm2Ancestral, false);
    /// `dpm2_a_karras`.
    pub const DPM2_A_KARRAS: Self = kind(Algorithm::Dpm2Ancestral, true);
    /// `dpm++2s_a`.
    pub const DPMPP_2S_A: Self = kind(Algorithm::DpmPP2SAncestral, false);
    /// `dpm++2s_a_karras`.
    pub const DPMPP_2S_A_KARRAS: Self = kind(Algorithm::DpmPP2SAncestral, true);
    /// `dpm++2m`.
    pub const DPMPP_2M: Self = kind(Algorithm::DpmPP2M, false);
    /// `dpm++2m_karras`.
    pub const DPMPP_2M_KARRAS: Self = kind(Algorithm::DpmPP2M, true);
    /// `dpm++2mv2`.
    pub const DPMPP_2M_V2: Self = kind(Algorithm::DpmPP2MV2, false);
    /// `dpm++2mv2_karras`.
    pub const DPMPP_2M_V2_KARRAS: Self = kind(Algorithm::DpmPP2MV2, true);
    /// `lcm`.
    pub const LCM: Self = kind(Algorithm::Lcm, false);
    /// `ddim`.
    pub const DDIM: Self = kind(Algorithm::Ddim, false);
    /// `pndm` (AUTOMATIC1111's "PLMS").
    pub const PNDM: Self = kind(Algorithm::Pndm, false);

    /// Every valid sampler, in the order names are listed.
    pub const ALL: [SamplerKind; 19] = [
        Self::EULER,
        Self::EULER_KARRAS,
        Self::EULER_A,
        Self::EULER_A_KARRAS,
        Self::HEUN,
        Self::HEUN_KARRAS,
        Self::DPM2,
        Self::DPM2_KARRAS,
        Self::DPM2_A,
        Self::DPM2_A_KARRAS,
        Self::DPMPP_2S_A,
        Self::DPMPP_2S_A_KARRAS,
        Self::DPMPP_2M,
        Self::DPMPP_2M_KARRAS,
        Self::DPMPP_2M_V2,
        Self::DPMPP_2M_V2_KARRAS,
        Self::LCM,
        Self::DDIM,
        Self::PNDM,
    ];

    /// The sampler of `algorithm`, with Karras sigmas or not.
    ///
    /// # Errors
    ///
    /// [`SamplerError::KarrasUnsupported`] for Karras with LCM, DDIM or PNDM.
    pub fn new(algorithm: Algorithm, karras: bool) -> Result<Self, SamplerError> {
        let kind = Self { algorithm, karras };
        if kind.is_valid() {
            Ok(kind)
        } else {
            Err(SamplerError::KarrasUnsupported {
                sampler: algorithm.name(),
            })
        }
    }

    /// Whether this combination exists (Karras only with a sigma-based algorithm).
    pub fn is_valid(self) -> bool {
        !self.karras || self.algorithm.supports_karras()
    }

    /// Model calls per step ([`Algorithm::order`]).
    pub fn order(self) -> usize {
        self.algorithm.order()
    }

    /// The canonical name: the algorithm's name, with `_karras` for Karras sigmas
    /// (`euler`, `euler_karras`, `euler_a`, ..., `dpm++2mv2_karras`, `lcm`, `ddim`, `pndm`).
    /// An invalid hand-made combination is named the same way (`ddim_karras`), a name
    /// [`SamplerKind::parse`] refuses.
    pub fn name(self) -> &'static str {
        use Algorithm as A;
        match (self.algorithm, self.karras) {
            (algorithm, false) => algorithm.name(),
            (A::Euler, true) => "euler_karras",
            (A::EulerAncestral, true) => "euler_a_karras",
            (A::Heun, true) => "heun_karras",
            (A::Dpm2, true) => "dpm2_karras",
            (A::Dpm2Ancestral, true) => "dpm2_a_karras",
            (A::DpmPP2SAncestral, true) => "dpm++2s_a_karras",
            (A::DpmPP2M, true) => "dpm++2m_karras",
            (A::DpmPP2MV2, true) => "dpm++2mv2_karras",
            (A::Lcm, true) => "lcm_karras",
            (A::Ddim, true) => "ddim_karras",
            (A::Pndm, true) => "pndm_karras",
        }
    }

    /// AUTOMATIC1111's name (its `Sampler:` in PNG parameters): [`Algorithm::a1111_name`],
    /// with ` Karras` for Karras sigmas (`Euler a`, `DPM++ 2M Karras`, `DPM2 a Karras`,
    /// `PLMS`, ...).
    pub fn a1111_name(self) -> &'static str {
        use Algorithm as A;
        match (self.algorithm, self.karras) {
            (algorithm, false) => algorithm.a1111_name(),
            (A::Euler, true) => "Euler Karras",
            (A::EulerAncestral, true) => "Euler a Karras",
            (A::Heun, true) => "Heun Karras",
            (A::Dpm2, true) => "DPM2 Karras",
            (A::Dpm2Ancestral, true) => "DPM2 a Karras",
            (A::DpmPP2SAncestral, true) => "DPM++ 2S a Karras",
            (A::DpmPP2M, true) => "DPM++ 2M Karras",
            (A::DpmPP2MV2, true) => "DPM++ 2M v2 Karras",
            (A::Lcm, true) => "LCM Karras",
            (A::Ddim, true) => "DDIM Karras",
            (A::Pndm, true) => "PLMS Karras",
        }
    }

    /// The sampler called `name`, ignoring case and surrounding spaces: a canonical
    /// [`SamplerKind::name`], AUTOMATIC1111's name ([`SamplerKind::a1111_name`], e.g.
    /// `Euler a`, `DPM++ 2M Karras`, `DPM2 a Karras`, `PLMS`), our old names `dpmpp_2m` and
    /// `dpmpp_2m_karras`, and k-diffusion-style names (`k_euler_a`, `k_dpmpp_2s_ancestral`,
    /// `k_dpm_2_a`, each also with `_karras`).
    ///
    /// # Errors
    ///
    /// [`SamplerError::UnknownSampler`], listing the canonical names, for anything else,
    /// including Karras with LCM, DDIM or PNDM (`ddim_karras`).
    pub fn parse(name: &str) -> Result<Self, SamplerError> {
        let lower = name.trim().to_ascii_lowercase();
        let (base, karras) = match lower
            .strip_suffix("_karras")
            .or_else(|| lower.strip_suffix(" karras"))
        {
            Some(base) => (base, true),
            None => (lower.as_str(), false),
        };
        Algorithm::ALL
            .into_iter()
            .find(|algorithm| algorithm.aliases().contains(&base))
            .map(|algorithm| Self { algorithm, karras })
            .filter(|kind| kind.is_valid())
            .ok_or_else(|| SamplerError::UnknownSampler {
                name: name.into(),
                known: Self::known_names(),
            })
    }

    /// The canonical names of [`SamplerKind::ALL`], comma-separated.
    fn known_names() -> String {
        Self::ALL.map(Self::name).join(", ")
    }
}

impl fmt::Display for SamplerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for SamplerKind {
    type Err = SamplerError;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        Self::parse(name)
    }
}
