//! spec §1.3: ds4's pre-tokenizer, an approximation of the JoyAI split regexes.
